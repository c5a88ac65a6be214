def report():
    """temporary"""
