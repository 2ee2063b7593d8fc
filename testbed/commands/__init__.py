"""The user's commands: the command line (cli.py, the only module that talks to the user),
status, the interactive shell, packet capture, Locust's web UI."""
