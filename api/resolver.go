package api

import (
	"context"

	"github.com/callbackd/callbackd/api/internal/gql"
	"github.com/callbackd/callbackd/settings"
)

// resolver implements the generated gql.ResolverRoot.
type resolver struct{ s *Server }

func (r *resolver) Query() gql.QueryResolver       { return queryResolver{r.s} }
func (r *resolver) Mutation() gql.MutationResolver { return mutationResolver{r.s} }

type queryResolver struct{ s *Server }

type mutationResolver struct{ s *Server }

// Settings are read from the store, not the watched View: a read right after
// a write sees the write.

func (q queryResolver) Project(ctx context.Context, id string) (*gql.Project, error) {
	num, err := idArg(TypeProject, "id", id)
	if err != nil {
		return nil, err
	}
	p, err := q.s.store.Project(ctx, num)
	if err != nil {
		return nil, err
	}
	return projectOut(num, p), nil
}

func (q queryResolver) Account(ctx context.Context, id string) (*gql.Account, error) {
	num, err := idArg(TypeAccount, "id", id)
	if err != nil {
		return nil, err
	}
	a, err := q.s.store.Account(ctx, num)
	if err != nil {
		return nil, err
	}
	return accountOut(num, a), nil
}

func (q queryResolver) SsoClient(ctx context.Context, id string) (*gql.SsoClient, error) {
	num, err := idArg(TypeSSOClient, "id", id)
	if err != nil {
		return nil, err
	}
	c, err := q.s.store.SSOClient(ctx, num)
	if err != nil {
		return nil, err
	}
	return ssoClientOut(num, c), nil
}

// UpdateProject validates every field first, so that nothing is stored when
// any is wrong, then writes with compare-and-set. A field left out keeps its
// value; an explicit null clears it.
func (m mutationResolver) UpdateProject(ctx context.Context, in gql.UpdateProjectInput) (*gql.UpdateProjectPayload, error) {
	num, err := idArg(TypeProject, "projectId", in.ProjectID)
	if err != nil {
		return nil, err
	}
	var errs fieldErrors
	m.s.checkURL(&errs, "apiCallbackUrl", in.APICallbackURL)
	checkHeaders(&errs, "apiCallbackHeaders", in.APICallbackHeaders)
	if err := errs.err(); err != nil {
		return nil, err
	}
	var p settings.Project
	if !in.APICallbackURL.IsSet() && !in.APICallbackHeaders.IsSet() {
		p, err = m.s.store.Project(ctx, num)
	} else {
		p, err = m.s.store.UpdateProject(ctx, num, func(p *settings.Project) error {
			if v, ok := in.APICallbackURL.ValueOK(); ok {
				p.APICallbackURL = v
			}
			if v, ok := in.APICallbackHeaders.ValueOK(); ok {
				p.APICallbackHeaders = toSettings(v)
			}
			return nil
		})
	}
	if err != nil {
		return nil, storeError(err, "projectId")
	}
	return &gql.UpdateProjectPayload{Project: projectOut(num, p)}, nil
}

// UpdateAccount is UpdateProject for accounts, with ssoClientId.
func (m mutationResolver) UpdateAccount(ctx context.Context, in gql.UpdateAccountInput) (*gql.UpdateAccountPayload, error) {
	num, err := idArg(TypeAccount, "accountId", in.AccountID)
	if err != nil {
		return nil, err
	}
	var errs fieldErrors
	m.s.checkURL(&errs, "apiCallbackUrl", in.APICallbackURL)
	checkHeaders(&errs, "apiCallbackHeaders", in.APICallbackHeaders)
	var sso *string
	if v, ok := in.SsoClientID.ValueOK(); ok && v != nil {
		id, err := ParseID(TypeSSOClient, *v)
		if err != nil {
			errs.add("ssoClientId", "%s", trimBadID(err))
		}
		sso = &id
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	var a settings.Account
	if !in.APICallbackURL.IsSet() && !in.APICallbackHeaders.IsSet() && !in.SsoClientID.IsSet() {
		a, err = m.s.store.Account(ctx, num)
	} else {
		a, err = m.s.store.UpdateAccount(ctx, num, func(a *settings.Account) error {
			if v, ok := in.APICallbackURL.ValueOK(); ok {
				a.APICallbackURL = v
			}
			if v, ok := in.APICallbackHeaders.ValueOK(); ok {
				a.APICallbackHeaders = toSettings(v)
			}
			if in.SsoClientID.IsSet() {
				a.SSOClientID = sso // nil for an explicit null
			}
			return nil
		})
	}
	if err != nil {
		return nil, storeError(err, "accountId")
	}
	return &gql.UpdateAccountPayload{Account: accountOut(num, a)}, nil
}

// UpdateSsoClient is UpdateProject for SSO clients.
func (m mutationResolver) UpdateSsoClient(ctx context.Context, in gql.UpdateSsoClientInput) (*gql.UpdateSsoClientPayload, error) {
	num, err := idArg(TypeSSOClient, "ssoClientId", in.SsoClientID)
	if err != nil {
		return nil, err
	}
	var errs fieldErrors
	m.s.checkURL(&errs, "webhookUrl", in.WebhookURL)
	checkHeaders(&errs, "webhookHeaders", in.WebhookHeaders)
	if err := errs.err(); err != nil {
		return nil, err
	}
	var c settings.SSOClient
	if !in.WebhookURL.IsSet() && !in.WebhookHeaders.IsSet() {
		c, err = m.s.store.SSOClient(ctx, num)
	} else {
		c, err = m.s.store.UpdateSSOClient(ctx, num, func(c *settings.SSOClient) error {
			if v, ok := in.WebhookURL.ValueOK(); ok {
				c.WebhookURL = v
			}
			if v, ok := in.WebhookHeaders.ValueOK(); ok {
				c.WebhookHeaders = toSettings(v)
			}
			return nil
		})
	}
	if err != nil {
		return nil, storeError(err, "ssoClientId")
	}
	return &gql.UpdateSsoClientPayload{SsoClient: ssoClientOut(num, c)}, nil
}

func projectOut(id string, p settings.Project) *gql.Project {
	return &gql.Project{
		ID:                 GlobalID(TypeProject, id),
		APICallbackURL:     p.APICallbackURL,
		APICallbackHeaders: fromSettings(p.APICallbackHeaders),
	}
}

func accountOut(id string, a settings.Account) *gql.Account {
	out := &gql.Account{
		ID:                 GlobalID(TypeAccount, id),
		APICallbackURL:     a.APICallbackURL,
		APICallbackHeaders: fromSettings(a.APICallbackHeaders),
	}
	if a.SSOClientID != nil {
		g := GlobalID(TypeSSOClient, *a.SSOClientID)
		out.SsoClientID = &g
	}
	return out
}

func ssoClientOut(id string, c settings.SSOClient) *gql.SsoClient {
	return &gql.SsoClient{
		ID:             GlobalID(TypeSSOClient, id),
		WebhookURL:     c.WebhookURL,
		WebhookHeaders: fromSettings(c.WebhookHeaders),
	}
}
