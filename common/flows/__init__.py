"""Flow runs: the DAG model, its policies, the registered task functions and the run lifecycle."""
