"""Plain typed models and rules of Shanzhi: app specs, quantities, quotas, errors.

The domain imports nothing from the layers above it, so every rule here can be tested
without a database, a provider or a server.
"""
