"""The reliability and security suite: concurrency, crashes, corruption, hostile files, network.

A package so that its module names (``reliability.test_crashes``) cannot collide with test
modules of the same name elsewhere under ``tests/``.
"""
