"""
Engine.IO v4 and Socket.IO v5 for Twisted.
"""
