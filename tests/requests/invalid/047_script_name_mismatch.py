"""The path does not start with the SCRIPT_NAME given by a trusted peer."""

status = 500
