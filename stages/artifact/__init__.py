"""The artifact format, whole: what `golf pack` writes and `golf eval` reads.

Shipped (the read side the runtime needs): ``container`` (magic with the format version, header,
checksummed sections), ``codecs`` and ``rans`` (decoders), ``layout`` (sections -> tensors),
``bundle`` (the shipped code's importer). Never shipped: ``schema`` (the header's fields, built
and checked), ``verify`` (reading a file, trusting its code), ``decoded``, and the write side:
``quantized`` (quantize's record), ``streams`` (tensor -> section), ``encode``/``rans_encode``
(encoders), ``writer`` (the container's bytes and their breakdown). Shipped modules are stdlib +
numpy + torch with relative imports; this ``__init__`` ships too, so it stays empty.
"""
