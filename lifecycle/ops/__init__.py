"""Operating the pipeline against real servers: register the deployments, run a worker, start the dashboards."""
