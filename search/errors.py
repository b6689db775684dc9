"""The one exception type the command line turns into a single line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a config value, a file, a folder. The message names it."""


class DataError(UserError):
    """A dataset config value, file or folder is wrong; the message names which."""
