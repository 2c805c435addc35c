"""Techniques that live outside tasks/, as a user's would: the tests plug them in."""
