"""`golf submit`: the runs of several seeds -> a records folder with a train_gpt.py that repeats them."""
