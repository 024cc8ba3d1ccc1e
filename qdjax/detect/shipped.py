"""The names of the models the package ships (``qdjax/pretrained/<name>``): a light module,
so that a command line can list them without loading the network's libraries."""

# The preferred default first.
MODELS = ("general_fast", "general", "paper_fast", "paper")
