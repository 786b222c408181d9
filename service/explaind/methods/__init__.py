"""Explanation methods: one module per method, sharing methods.base."""
