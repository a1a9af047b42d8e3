"""The one exception type the CLI turns into a single line on stderr."""


class FacerecError(Exception):
    """A failure the user can act on; its message is one line that names the file or option at fault."""


class UsageError(FacerecError):
    """Bad usage (an unknown plugin name, a malformed option): the CLI exits with status 2."""


class GalleryBusy(FacerecError):
    """Another process holds the gallery's write lock; trying again later may succeed."""
