"""The results database: models, migrations, the embedded server and query functions."""
