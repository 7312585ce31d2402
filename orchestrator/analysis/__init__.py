"""Reading a sweep back: the `diagnose` view and its next space (review), the HTML report,
the plots, and what the terminal shows (progress). MLflow reads only; no Ray."""
