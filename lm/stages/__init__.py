"""Training stages: each supplies its batch format and loss to the shared step."""
