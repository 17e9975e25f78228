"""The pure core: cluster snapshot + settings -> desired state -> rendered files.

Nothing in this package touches the network, the filesystem (templates aside), the clock
or the environment; everything comes in as an argument.  An import contract
(``.importlinter``, checked by ``lint-imports`` in CI) keeps the shell out of it.
"""
