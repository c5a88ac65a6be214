"""The artifact format: the contract `golf pack` writes and `golf eval` reads.

- ``container``: magic, compressed JSON header, checksummed sections (ships in the artifact);
- ``codecs``: the decode side of the section codecs and the byte unshuffle (ships);
- ``rans``: the decoder of golf's own order-0 entropy coder for the quantized codes (ships);
- ``layout``: the code section, the weights sections per tensor group, and decoding the tensors
  out of them (ships: the runtime reads the weights with it);
- ``bundle``: collecting the shipped code and importing it from the artifact's bytes (ships);
- ``header``: the header's required fields, and a well-formedness check with one-line errors;
- ``verify``: reading an artifact file for use, and the one check that its code is golf's own
  (eval, ``pack --check`` and inspect all ask it).

The shipped modules are stdlib + numpy + torch and import each other relatively. This
``__init__`` stays empty: it ships too.
"""
