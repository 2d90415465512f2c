"""Apache Airflow provider for the RunComfy Model API."""

__version__ = "0.1.0"
