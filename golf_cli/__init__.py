"""golf's command line: one thin module per command; all numeric work lives in ``stages``."""
