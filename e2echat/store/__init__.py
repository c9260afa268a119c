"""The client's disk: the only module tree that reads or writes the profile."""
