"""The pipeline wing: the ``pipeline`` flow, its parameters, its plan and its report."""
