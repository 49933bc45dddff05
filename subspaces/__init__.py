"""subspaces"""
