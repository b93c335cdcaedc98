"""Policy endpoints: ``/v1/policies`` and ``/v1/policies/{prefix}`` (admin tokens change them)."""

from __future__ import annotations

from aiohttp import web

from casd.auth import require_admin
from casd.http.context import core_of, read_scope, request_token
from casd.http.names import read_json
from casd.policies import Policy, PolicyService


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/policies", list_policies)
    # Any characters, as for names: a prefix that is no name is 400, not "no resource" (404).
    app.router.add_get(r"/v1/policies/{prefix:[\s\S]+}", get_policy)
    app.router.add_put(r"/v1/policies/{prefix:[\s\S]+}", put_policy)
    app.router.add_delete(r"/v1/policies/{prefix:[\s\S]+}", delete_policy)


def policies_of(request: web.Request) -> PolicyService:
    return core_of(request).policies


async def list_policies(request: web.Request) -> web.Response:
    await read_scope(request)  # readable by whoever may read (a token on private servers)
    policies = await policies_of(request).list()
    body = {"policies": [policy.as_dict() for policy in policies]}
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


async def get_policy(request: web.Request) -> web.Response:
    await read_scope(request)
    policy = await policies_of(request).get(request.match_info["prefix"])
    return web.json_response(policy.as_dict(), headers={"Cache-Control": "no-cache"})


async def put_policy(request: web.Request) -> web.Response:
    token = require_admin(await request_token(request), "setting a policy")
    policy = Policy.from_json(request.match_info["prefix"], await read_json(request))
    stored, created = await policies_of(request).set(policy, token.actor)
    return web.json_response(stored.as_dict(), status=201 if created else 200)


async def delete_policy(request: web.Request) -> web.Response:
    require_admin(await request_token(request), "removing a policy")
    await policies_of(request).delete(request.match_info["prefix"])
    return web.Response(status=204)
