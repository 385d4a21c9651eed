"""Tools for developing and measuring Chainline, kept apart from the product: the
`chainline dev` stack on embedded servers, and `chainline bench` with its contenders."""
