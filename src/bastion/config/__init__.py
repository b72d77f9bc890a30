"""The declarative configuration: typed models, YAML and OpenAPI loading, validation."""
