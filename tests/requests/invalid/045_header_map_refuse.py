"""--header-map refuse answers 400 to an underscore header."""

status = 400
args = ['--header-map', 'refuse']
