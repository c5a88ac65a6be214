"""golf's library: one package per pipeline stage plus what they share.

Package ``__init__`` files stay empty on purpose: the packed artifact ships some of these
modules as its own code (see ``stages/artifact/bundle.py``), and an import in an ``__init__``
would drag unrelated code into every artifact.
"""
