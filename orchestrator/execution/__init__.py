"""Ray: the runtime (start-up), the seams and runners that run the core loop in a Tune trial
or a TorchTrainer worker group, the feed choice, the trainable, searchers and schedulers."""
