// Package config defines the controller's settings, their defaults (which
// match the product's seed: app=hapod, role=active/standby,
// pwcriticality=critical) and their validation, so that bad input is
// refused at start with a message that names the flag.
package config
