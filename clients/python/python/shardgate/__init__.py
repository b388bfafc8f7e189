"""shardgate: read signed, immutable dataset releases from Python, verifying
every byte against the release's signed manifest.

    import fsspec
    with fsspec.open("shardgate://imagenet-mini@1.4.2/train-000000.tar",
                     endpoints=["http://127.0.0.1:8088"], trust=["ed25519:..."]) as f:
        head = f.read(512)
"""

# Stubs generated from the project's protos (`shardgate.usage.v1`, ...) share this
# top-level name: let them live in another directory on sys.path.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from .client import Client  # noqa: E402
from .config import Config
from .errors import (
    ConfigError,
    DeadlineError,
    EncryptedFileError,
    IntegrityError,
    ManifestError,
    NotFound,
    ReadError,
    ShardgateError,
    TakenDown,
)
from .fs import ShardgateFileSystem

__all__ = [
    "Client",
    "Config",
    "ConfigError",
    "DeadlineError",
    "EncryptedFileError",
    "IntegrityError",
    "ManifestError",
    "NotFound",
    "ReadError",
    "ShardgateError",
    "ShardgateFileSystem",
    "TakenDown",
    "register_webdataset",
]
__version__ = "0.1.0"


def register_webdataset() -> None:
    """Lets WebDataset open `shardgate://` URLs (its `gopen` has a fixed table of schemes).

    Settings come from the environment or the config file, as for any URL
    WebDataset opens by itself.
    """
    import importlib

    import fsspec

    # `webdataset.gopen` is also the name of a function the package exports: take the module.
    gopen = importlib.import_module("webdataset.gopen")

    def gopen_shardgate(url, mode="rb", bufsize=8192, **kw):
        if mode[0] != "r":
            raise ValueError(f"{url}: shardgate:// is read-only")
        return fsspec.open(url, "rb").open()

    gopen.gopen_schemes["shardgate"] = gopen_shardgate
