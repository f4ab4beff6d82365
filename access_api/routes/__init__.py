"""HTTP routes: thin views that parse, call a service or the policy, log, and shape responses."""
