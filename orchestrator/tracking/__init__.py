"""MLflow: the one writer (``writer``) and its outbox, the registry (``registry`` reads,
``champions`` writes), where the store is (``location``) and every key written
(``schema``). Import the submodule you need: this package itself imports nothing."""
