"""Run-folder control: the lock, run.json, the resume check, MLflow tracking and its logger."""
