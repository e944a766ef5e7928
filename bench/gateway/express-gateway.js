// The Express gateway the Python one is measured against: helmet, express-rate-limit and
// http-proxy-middleware, as a typical Node API gateway is assembled.
const express = require("express");
const helmet = require("helmet");
const { rateLimit } = require("express-rate-limit");
const { createProxyMiddleware } = require("http-proxy-middleware");

const app = express();
app.disable("x-powered-by");
app.use(helmet());
app.use(rateLimit({ windowMs: 60_000, limit: Number(process.env.RATE_LIMIT || 100),
                    standardHeaders: "draft-7", legacyHeaders: false }));
app.use("/api", createProxyMiddleware({
  target: process.env.UPSTREAM + "/api",
  changeOrigin: true,
  xfwd: true,
  proxyTimeout: 10_000,
  agent: new (require("http").Agent)({ keepAlive: true, maxSockets: 256 }),
}));
app.listen(Number(process.env.PORT), "127.0.0.1");
