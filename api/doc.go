// Package api is callbackd's admin HTTP API (SPEC §4): GraphQL at
// POST /graphql for project, account and SSO-client settings, the delivery
// log, dead-letter replay and test callbacks; GET /healthz, GET /readyz and
// GET /metrics (Prometheus). Every route but /healthz needs the bearer token.
//
// The GraphQL schema is schema.graphql; the executable schema in
// internal/gql is generated from it by gqlgen (make gqlgen). Package api
// implements the resolvers by hand.
package api
