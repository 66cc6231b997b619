'use strict';

const { TokenClient, Token, TokenvendError, status, credentials, loadProto, PROTO_DIR } = require('./client');
const { attachTokenvend, tokenvendFetch } = require('./http');

module.exports = {
  TokenClient,
  Token,
  TokenvendError,
  status,
  credentials,
  attachTokenvend,
  tokenvendFetch,
  loadProto,
  PROTO_DIR,
};
