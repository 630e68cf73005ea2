"""Campaign models on the training side: the response model of a campaign (``train``), the campaign
backtest on past data (``backtest``), and the uplift / response benchmarks' data (Hillstrom, Complete
Journey). The spec, audience, scoring and readout are ``serving.campaigns``."""
