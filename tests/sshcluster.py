"""The test cluster lives in the package (prng_cache.testing.sshcluster) so
that `prng-cache bench` can start one too; tests import it by this name."""

from prng_cache.testing.sshcluster import *  # noqa: F401,F403
from prng_cache.testing.sshcluster import __all__  # noqa: F401
