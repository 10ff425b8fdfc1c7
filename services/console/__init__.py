"""The console: server-rendered pages for people, reading the other services' HTTP APIs with
the signed-in credential (a team token or a member's API key), never the database."""
