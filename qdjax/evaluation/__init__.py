"""One metric for every method: matching, precision-recall, AUC."""
