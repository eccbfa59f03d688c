"""semalign_core: the small core package behind the SemAlign and SALF notebooks."""

from semalign_core.paths import configure_cache_env

configure_cache_env()

__version__ = "0.1.0"
