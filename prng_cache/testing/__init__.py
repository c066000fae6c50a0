"""Test and benchmark support shipped with the package (not used at run time):
a real-sshd cluster on one machine, for the test suite and `prng-cache bench`."""
