"""OAuth 2: Bastion as a resource server for any identity provider, and as an authorization server.

Layers (each module has one job):

- Resource server (validating tokens on API routes):
  ``jwt`` hardened JWS/JWT verification on joserfc; ``jwks`` remote key sets (discovery, cache, bounded
  single-flight refetch, bounded staleness); ``introspection`` RFC 7662 client for opaque tokens;
  ``token_cache`` verified-token cache; ``resource`` picks the trusted issuer and turns a token into a
  ``Principal``. The ``oauth2`` policy (``bastion.policies.oauth2``) runs it in the AUTHENTICATE stage.
- Authorization server (``bastion.oauth.server``): client registry, signing keys with rotation, grants
  (client credentials, authorization code + PKCE S256, rotating refresh tokens), the HTTP endpoints, and
  the revocation list every node checks.

``contracts`` holds the few interfaces the two sides share, so neither imports the other's internals.
"""
