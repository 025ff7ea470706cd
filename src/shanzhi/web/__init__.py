"""The web console's assets: one HTML page, its scripts (plain ES modules, no build step, no
framework) and its style sheet, served by `shanzhi serve` at `/` with nothing fetched from
elsewhere. The console talks to the API only (`/api/v1`, a session cookie and its CSRF token),
so it sees exactly what the API lets the signed-in user see; there is no Python here.
"""
