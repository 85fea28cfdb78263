"""vhost-user and virtqueues, driven by a test front end with no VM."""
