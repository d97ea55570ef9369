"""The BentoML service that the package stage builds into a Bento (service.py, bentofile.yaml).

uploads.py: the request and its errors; coalesce.py: adaptive batching of concurrent requests;
production.py: following deploy/production.json; settings.py: the environment and params.yaml's
`service` section; access.py: the bearer token; admission.py: refusing overload.
"""
