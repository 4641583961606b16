"""The fake Neuron Runtime (``libnrt.so.1``) behind :func:`spiky.testing.fake_neuron`.

- ``fake_nrt.c``: the library, in C (its header comment is the contract it enforces);
- :mod:`~spiky.testing.fake_nrt.build`: compiles it (cached by source hash);
- :mod:`~spiky.testing.fake_nrt.control`: its ctypes binding (:class:`FakeNrt`);
- :mod:`~spiky.testing.fake_nrt.neff`: the fake NEFF format it loads.

The three modules use only the standard library: spiky-runtime's tests load them by path
without importing spiky.
"""
