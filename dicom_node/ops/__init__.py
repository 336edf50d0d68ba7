"""Running the node: the service that starts and stops every part, health and metrics
endpoints, status for the command line, and logging."""
