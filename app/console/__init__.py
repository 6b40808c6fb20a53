"""The web console: server-rendered pages under /console for the people who run deletions and
the people who audit them. Pages act as the signed-in key would through the API: the same
services, the same organisation and the same scopes."""
