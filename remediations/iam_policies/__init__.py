"""IAM policies of every resource that has one: which API reads and writes each asset type's policy, and how.

`endpoints` is the table (asset type -> service, resource pattern, transport, permissions); `transports` reads and
writes a policy through the resource's own API (Resource Manager and Cloud Storage through their client libraries,
the rest through their REST `getIamPolicy`/`setIamPolicy`); `datasets` maps a BigQuery dataset's access list to
bindings and back, since datasets keep their policy there. Every write carries the etag read and asks for version 3
policies, so conditional bindings come back and go back as they are.
"""
