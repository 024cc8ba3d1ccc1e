"""ml_collections configs of the experiments/ scripts, each a ``get_config()``.

A script's ``--config`` defaults to its file here (found beside the script, from any
working directory); ``--config=PATH`` picks another and ``--config.<field>=value``
overrides a field. Variants import the file they change (``from configs import default``,
as in Flax's examples): ``experiments/`` is on ``sys.path`` when a script in it runs.
"""
