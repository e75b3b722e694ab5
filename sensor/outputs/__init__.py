"""Output sinks and the one module (ecs) that maps everything to Elastic Common Schema documents."""
